"""`python -m segplank`: the CLI from any interpreter that has segplank, no activated venv needed."""
from segplank.cli import main

main()
