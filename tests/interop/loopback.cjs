// Preloaded (`node --require`) into third-party servers the tests start: binds every
// server that would listen on all interfaces to 127.0.0.1 instead, since tests listen on
// loopback only.
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  if (typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port))) {
    if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  } else if (port && typeof port === "object" && port.port !== undefined && !port.host) {
    args[0] = { ...port, host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
