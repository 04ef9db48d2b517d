"""Image registries, read at admission for the ENTRYPOINT/CMD of containers without a command.

One module per concern: ``references`` (image names), ``platforms``, ``credentials`` (pull
secrets' contents), ``challenges`` (WWW-Authenticate and the token dance), ``config`` (what an
image config yields), ``responses`` (budgets and bounded reads), ``resolver`` (the cached
resolver the webhook calls), ``secrets`` (reading pull Secrets through the API), ``egress``
(which hosts and addresses may be reached), ``pool`` (look-up threads), ``settings``.
"""
