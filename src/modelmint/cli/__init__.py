"""The `modelmint` command line (Typer + Rich)."""
