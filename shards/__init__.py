"""WebDataset shards: the sample contract, writer, index, verify and inspect; local paths and s3:// alike."""
