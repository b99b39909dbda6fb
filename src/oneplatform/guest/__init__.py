"""The guest agent: runs inside every datastore image, on the image's own Python.

Standard library only, and relative imports only: the images ship this package as one
zipapp, ``/usr/local/lib/oneplatform/agent.pyz`` (``zipapp:oneplatform.guest`` in a recipe,
see images/recipes.py). The platform imports :mod:`.contract`, :mod:`.bundle` and
:mod:`.signing` from it; nothing here imports the platform.

    contract     what the platform and the images agree on: paths, port, disk serials
                 and labels, environment, the generated-password alphabet
    bundle       the config bundle format (made by the platform, read by the agent)
    signing      request signing (the platform) and verification (the agent)
    processes    child processes, and reaping orphans as a container's PID 1
    engines/     one module per datastore engine, registered by name in engines/__init__
    supervisor   runs the engine: start, readiness, restart with backoff, stop
    http         the agent's HTTP API
    machine      VM mode: the agent as PID 1 of a VM (power button, power off)
    main         the program; ``__main__`` runs it
"""
