-- wrk script: each request calls hello on a random actor: one of the ids listed one a
-- line in the file IDS_FILE if it is set, else one of 1..RANDOM_IDS. SEED varies the
-- sequence between wrk processes started in the same second.
local ids, path = {}, os.getenv("IDS_FILE")
if path then
  for line in io.lines(path) do ids[#ids + 1] = line end
end
local count = tonumber(os.getenv("RANDOM_IDS") or "10000")
math.randomseed(os.time() + tonumber(os.getenv("SEED") or "0"))

request = function()
  local id = #ids > 0 and ids[math.random(#ids)] or math.random(1, count)
  return wrk.format("GET", "/invoke/" .. id .. "/hello")
end
