"""normalizer: the complaint record and the pure functions that turn each channel's raw message into it."""
