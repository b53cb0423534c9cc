"""Media preprocessing (images, audio, video) and encoder stages."""
