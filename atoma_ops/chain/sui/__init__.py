"""The Chain port on a real Sui network through pysui (to come; the localnet adapter is the reference)."""
