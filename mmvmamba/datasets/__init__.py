"""Data the project generates itself (no download): the synthetic shapes dataset of the demo."""
