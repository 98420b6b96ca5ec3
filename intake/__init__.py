"""intake: an omnichannel complaint intake gateway."""
