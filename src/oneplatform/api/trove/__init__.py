"""The Trove v1.0 facade: OpenStack Trove's database API under ``/v1.0/{project_id}``, a thin
translation onto the platform's own services (``dbaas``, the compute catalog), so that
python-troveclient, ``openstack database …`` and openstacksdk work unchanged.

``faults`` writes Trove's error bodies, ``views`` turns the platform's answers into Trove's
shapes, and one router module per resource maps Trove's requests onto the services.
"""
