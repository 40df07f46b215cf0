"""Shared plumbing of Dino Wallet: settings, logging, errors, connections, dev stack and the CLI."""
