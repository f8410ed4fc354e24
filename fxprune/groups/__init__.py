"""Channel-group discovery: propagate channel slots through the captured graph and couple them."""
