"""Speech engines: text to speech (spectrogram + streamed vocoder) and speech to text."""
