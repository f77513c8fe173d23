"""Models: the vector quantizer, the N-d VQ-VAE and the PixelCNN prior."""
