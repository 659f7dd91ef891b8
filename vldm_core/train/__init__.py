"""Training the temporal layers, prediction and interpolation models, temporal decoder and upscaler."""
