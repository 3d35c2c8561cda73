-- wrk script for the e2e tests: every request gets its own target (/echo?n=1, /echo?n=2, ...), so a
-- captured exchange whose response does not answer its own request is visible (nginx's /echo answers
-- "GET <target>\n"). Run wrk with -t1: one Lua state, one counter, targets unique.
counter = 0

request = function()
  counter = counter + 1
  return wrk.format("GET", "/echo?n=" .. counter)
end
