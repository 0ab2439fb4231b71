"""Commands registered by this module are added as their issues land."""
