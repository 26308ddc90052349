"""Data: the embedded synthetic world, dataset readers, zarr preparation and subsets."""
