"""decodekit's plugin system (pluggy): hook specifications and the plugin manager factory."""
