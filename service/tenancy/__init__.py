"""Tenancy: keys and the principal they identify, the key store, tenants, rate limits, quota, key changes."""
