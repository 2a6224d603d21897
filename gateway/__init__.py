"""The top of the layers: the root URLconfs, which wire every app's views into one site."""
