"""What an encoder learned about the world's factors: probe sets, decoding, directions, MI (docs/analysis.md)."""
