"""The model zoo: generative models written in Pyro syntax, each usable by import spec
(``models.vae:VAE``) from the ``pyro-vae`` command or directly from Python."""
