// Node's built-in http2 module, h2c with prior knowledge: GET /hello, POST /echo (the body back).
const http2 = require("http2");
const port = Number(process.argv[2]);
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  const chunks = [];
  stream.on("data", (chunk) => chunks.push(chunk));
  stream.on("end", () => {
    const path = headers[":path"];
    const body = path === "/echo" ? Buffer.concat(chunks) : Buffer.from(path === "/hello" ? "hello from node\n" : "not found\n");
    stream.respond({ ":status": path === "/hello" || path === "/echo" ? 200 : 404, "content-type": "text/plain" });
    stream.end(body);
  });
});
server.listen(port, "127.0.0.1");
