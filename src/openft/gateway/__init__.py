"""The gateway role: files, fine-tuning jobs and chat completions routed to
provider accounts an operator configured, next to the work this deployment
does itself.

- ``accounts``: the accounts (``OPENFT_PROVIDERS_FILE``), their organisations and keys;
- ``forward``: one request to an account and the errors a client sees;
- ``memory``: where an organisation's objects live (``routed_objects``, and a per-process memory).

The ASGI layer that picks the account of a request (``x-tfy-provider-name``,
``account/model``, or the remembered route of an id) is
``openft.api.gateway``.
"""
