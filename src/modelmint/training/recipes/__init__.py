"""One module per recipe; ``modelmint.training.catalog`` maps CLI names to them."""
