"""Host services: processes the platform runs beside its API on a host, for its guests (the
backup store now, the endpoint proxy later), with the small CA whose certificates they serve."""
