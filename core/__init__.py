"""The foundation every other dcx package builds on; it imports nothing else of dcx."""
