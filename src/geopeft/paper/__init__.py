"""Paper outputs: the runs table (CSV), figures (PDF + PNG) and a LaTeX booktabs table."""
