# Sourced by the GPU scripts: UV, the uv command as an array: the one `uv run` names in $UV, else
# uv on PATH, else the README's `python3 -m uv`.
if [ -n "${UV:-}" ] && [ -x "$UV" ]; then UV=("$UV")
elif command -v uv > /dev/null; then UV=(uv)
else UV=(python3 -m uv); fi
