// nodemailer-send.js - one message through nodemailer's SMTP transport, for
// test/interop_clients.sh.
//   node nodemailer-send.js MODULES MODE PORT CAFILE USER PASSWORD FROM TO FILE
// MODULES: the node_modules directory nodemailer was installed in (npm install in a temp dir).
// MODE "plain": no TLS at all (ignoreTLS; nodemailer otherwise tries STARTTLS when offered).
// MODE "starttls": STARTTLS required (requireTLS), the certificate verified against CAFILE
// only, then AUTH PLAIN as USER with PASSWORD when USER is not "-".
// FILE goes out as it is ("raw", with an explicit envelope), so nodemailer adds no header.
// The transcript is logged (nodemailer hides the credentials); a failure exits with status 1.
'use strict';
const fs = require('fs');
const path = require('path');

const [modules, mode, port, cafile, user, password, from, to, file] = process.argv.slice(2);
if (!file || (mode !== 'plain' && mode !== 'starttls')) {
  console.error('usage: node nodemailer-send.js MODULES plain|starttls PORT CAFILE USER PASSWORD' +
                ' FROM TO FILE');
  process.exit(2);
}
const nodemailer = require(path.join(modules, 'nodemailer'));
const version = require(path.join(modules, 'nodemailer', 'package.json')).version;
console.log('nodemailer ' + version + ', node ' + process.version);

const options = {
  host: '127.0.0.1',
  port: Number(port),
  secure: false,            // no implicit TLS
  name: 'localhost',        // the EHLO name (the default depends on the machine's host name)
  connectionTimeout: 10000,
  greetingTimeout: 10000,
  socketTimeout: 20000,
  logger: true,
  debug: true,
};
if (mode === 'plain') {
  options.ignoreTLS = true;
} else {
  options.requireTLS = true;
  options.tls = { ca: [fs.readFileSync(cafile)], rejectUnauthorized: true };
  if (user !== '-') {
    options.auth = { user: user, pass: password };
    options.authMethod = 'PLAIN';
  }
}

const transport = nodemailer.createTransport(options);
transport.sendMail({ envelope: { from: from, to: [to] }, raw: fs.readFileSync(file) })
  .then((info) => {
    console.log('response: ' + info.response);
    console.log('accepted: ' + JSON.stringify(info.accepted) +
                ', rejected: ' + JSON.stringify(info.rejected));
    if (info.accepted.length !== 1 || info.rejected.length !== 0) {
      console.error('nodemailer-send: the recipient was not accepted');
      process.exit(1);
    }
  })
  .catch((err) => {
    console.error('nodemailer-send: ' + (err.code || '') + ' ' + err.message);
    process.exit(1);
  });
