// A Node.js `http` server for the e2e tests. Usage: node node_server.js PORT
//
//   GET  /hello        -> res.end(text): one write, Content-Length framed
//   GET  /stream?n=N   -> N res.write() calls then res.end(): chunked transfer coding (Node's default)
//   GET  /big?size=N   -> N bytes of a repeating pattern in one res.write(): chunked
//   POST /echo         -> the request body back, chunked
'use strict';
const http = require('http');

function pattern(n) {
  const block = Buffer.from(Array.from({ length: 94 }, (_, i) => 33 + i));
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i += block.length) block.copy(out, i, 0, Math.min(block.length, n - i));
  return out;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/hello') {
    res.setHeader('Content-Type', 'text/plain');
    res.end('hello from node\n');
  } else if (req.method === 'GET' && url.pathname === '/stream') {
    const n = Number(url.searchParams.get('n') || 5);
    res.setHeader('Content-Type', 'text/plain');
    for (let i = 0; i < n; i++) res.write(`node line ${i}\n`);
    res.end();
  } else if (req.method === 'GET' && url.pathname === '/big') {
    res.setHeader('Content-Type', 'application/octet-stream');
    res.write(pattern(Number(url.searchParams.get('size'))));
    res.end();
  } else if (req.method === 'POST' && url.pathname === '/echo') {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      res.setHeader('Content-Type', 'application/octet-stream');
      res.write(Buffer.concat(parts));
      res.end();
    });
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
