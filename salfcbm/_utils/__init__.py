"""Private helpers shared by every layer (one home per mechanism). Not public API."""
