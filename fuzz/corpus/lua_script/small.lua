return { check = function(ctx) return { ok = true } end, interval = "10s", params = { a = 1 } }
