"""The RPC path: what happens to one invocation, from the NATS message to the reply.

``invocations`` drives it (decode, claims, checks, dispatch, reply); ``verifier`` and
``verify_worker`` check signatures in batches on the second core; ``chunking`` moves bodies over
the message limit through the object store; ``links`` says which actors may call;
``kvservice`` maps the 15 keyvalue operations onto the store. Nothing here subscribes to NATS:
the process shell (:mod:`provider.daemon`) feeds messages in and sends replies out.
"""
