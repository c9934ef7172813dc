-- wrk script: every request calls hello on an actor never called before, PREFIX
-- followed by 1, 2, 3... (one counter per wrk thread: run it with -t1).
local prefix, n = os.getenv("PREFIX") or "new-", 0

request = function()
  n = n + 1
  return wrk.format("GET", "/invoke/" .. prefix .. n .. "/hello")
end
