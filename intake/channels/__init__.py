"""channels: one module per channel, each receiving raw messages and replying on its channel."""
