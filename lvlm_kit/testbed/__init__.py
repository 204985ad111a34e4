"""The embedded testbed: a procedural scene world and a small trained LLaVA-architecture model."""
