"""`python -m modelmint` runs the command line."""

from modelmint.cli.main import main

main()
