// What every MQTT.js script here ends with: one JSON line of its result on stdout, then its exit
// code; and a deadline after which it ends with `reason: 'timeout'` (unless a reason is set).
'use strict';

// Returns `finish(code)`: prints `result` once, as JSON, and exits with `code`. After
// `timeoutMs` it finishes with 1 by itself. `describe` (optional) adds to `result` what the
// script knows only at the end, on a failure (a code other than 0).
function finisher(result, timeoutMs, describe) {
  let finished = false;
  function finish(code) {
    if (finished) return;
    finished = true;
    if (code !== 0 && describe) describe();
    console.log(JSON.stringify(result));
    setImmediate(() => process.exit(code));
  }
  setTimeout(() => { result.reason = result.reason || 'timeout'; finish(1); }, timeoutMs);
  return finish;
}

module.exports = { finisher };
