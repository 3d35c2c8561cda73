"""The protocol stages under the Reassembler (sessions.py): HTTP/1 (http1 framing, h1pairing) and HTTP/2
(http2 framing, hpack_observer, h2streams, grpc), chosen per connection by detect's Sniffer. Both
implement the small interface of interface.py."""
