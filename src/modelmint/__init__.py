"""ModelMint: train, serve, meter and bill AI models from one self-hosted program."""

__version__ = "0.1.0"
