"""Compute: types, pools, hosts, flavors, instances, scheduler and drivers."""
