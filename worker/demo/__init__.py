"""``flashsale demo`` and the local stack it runs on; loaded only by the ``demo`` subcommand."""
