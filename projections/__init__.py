"""The read side: the projection worker, replay, the audit (`wallet verify`'s checks), the
queries and the HTTP query routes. Beside the processor; above storage."""
