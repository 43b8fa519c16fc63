"""Bottom layer: identities, canonical encoding, errors, membership and configuration."""
