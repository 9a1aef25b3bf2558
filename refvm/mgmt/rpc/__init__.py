"""libvirt's remote protocol (src/rpc/virnetprotocol.x, src/remote/remote_protocol.x, virkeepaliveprotocol.x).

``xdr`` encodes and decodes RFC 4506 XDR; ``protocol`` holds the programs, message types and procedure numbers;
``message`` frames packets (length word + header + payload) and builds error replies; ``types`` encodes the
structures the procedures share (domains, typed parameters).
"""
