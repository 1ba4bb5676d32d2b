"""TLS on a connection's raw socket, driven the way connections.py drives the socket itself.

trio's `SSLStream` costs several scheduler round trips per request (each read and write goes
through the stream's locks and checkpoints, then the socket stream's own): measured at about
three times the server CPU per unpipelined request of plaintext. Here the `ssl` module's
`SSLObject` works between two memory buffers, and the connection keeps its fast path: a
non-blocking `recv` that may raise BlockingIOError, a send that leaves at once when the kernel
takes it, and one wait for the socket only when there is nothing to do. The bytes on the socket
are always TLS records: nothing reaches it but what the SSLObject wrote.
"""

from __future__ import annotations

import socket
import ssl

import trio


class TlsChannel:
    def __init__(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        #: ciphertext the kernel has not taken yet
        self._out = b""

    async def handshake(self) -> None:
        """Until the handshake is done; ssl.SSLError (an OSError) when it fails, OSError when
        the client leaves. The caller's cancel scope bounds it."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.flush()
                await trio.lowlevel.wait_readable(self.raw)
                try:
                    fed = self._feed()
                except BlockingIOError:
                    continue  # woken without bytes after all
                if not fed:
                    raise ConnectionResetError("the client left during the TLS handshake") from None
            except ssl.SSLError:
                await self._send_alert()
                raise
        await self.flush()

    def recv(self, size: int) -> bytes:
        """Up to `size` decrypted bytes; b"" at the end of the stream; BlockingIOError when
        nothing can be read without waiting (as `socket.recv` on a non-blocking socket)."""
        chunks: list[bytes] = []
        got = 0
        while got < size:
            try:
                piece = self._tls.read(size - got)
            except ssl.SSLWantReadError:
                if chunks:
                    break
                self._flush_nowait()  # what reading may have to say (alerts, key updates)
                if not self._feed():
                    return b""
                continue
            except ssl.SSLZeroReturnError:  # the client's close_notify
                break
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
        return b"".join(chunks)

    def buffered(self) -> bool:
        """Bytes already read from the socket (whole records, or part of one) wait in here:
        try `recv` before waiting for the socket, which may have nothing more to say."""
        return bool(self._incoming.pending or self._tls.pending())

    def send(self, payload: bytes) -> bool:
        """Encrypt all of `payload` and send what the kernel takes now; True when all left."""
        self._tls.write(payload)
        self._out += self._outgoing.read()
        self._flush_nowait()
        return not self._out

    async def flush(self) -> None:
        """Wait until every encrypted byte has left (the caller bounds it: --write-timeout)."""
        self._out += self._outgoing.read()
        self._flush_nowait()
        while self._out:
            await trio.lowlevel.wait_writable(self.raw)
            self._flush_nowait()

    def _feed(self) -> bool:
        """Move what the socket has into the SSLObject; False at the end of the stream."""
        data = self.raw.recv(65536)  # BlockingIOError: nothing there yet
        if not data:
            return False
        self._incoming.write(data)
        return True

    def _flush_nowait(self) -> None:
        self._out += self._outgoing.read()
        if not self._out:
            return
        try:
            sent = self.raw.send(self._out)
        except BlockingIOError:
            return
        self._out = self._out[sent:]

    async def _send_alert(self) -> None:
        """A refused handshake leaves an alert (bad certificate, no certificate, version) in
        the buffer: send it if the socket takes it now, so the client hears why."""
        try:
            self._flush_nowait()
        except OSError:
            pass
