"""dcx.core: the foundation every other part of dcx stands on; it imports nothing else of dcx."""
