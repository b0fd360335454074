mod common;
use common::*;
#[tokio::test]
async fn smoke() {
    let o = run_body("return { ok = true, message = 'hi ' .. ctx.check .. ' ' .. ctx.host, value = 3 }").await;
    println!("{o:?}");
    let o = run_body("error('boom')").await;
    println!("{o:?}");
    let o = run_body("local x = nil; return x.y").await;
    println!("{o:?}");
    let o = run_body("return net.tcp{hots='x'}").await;
    println!("{o:?}");
    let o = run_body("local ok, e = pcall(net.tcp, {}) return {ok=false, message=e}").await;
    println!("{o:?}");
    let o = run_body("while true do end").await;
    println!("{o:?}");
    let o = run_body("local t = {} while true do t[#t+1] = string.rep('x', 4096) end").await;
    println!("{o:?}");
    let o = run_body("sleep(100) return {ok=true}").await;
    println!("{o:?}");
    let o = run_body("return {ok=true, mesage='x'}").await;
    println!("{o:?}");
    let o = run_body("return 5").await;
    println!("{o:?}");
    let c = lua_check(&body("ctx.state.n = (ctx.state.n or 0) + 1 return {ok=true, value=ctx.state.n}")).unwrap();
    for _ in 0..3 { let o = run(&c, std::time::Duration::from_secs(1)).await; println!("{o:?} {:?}", vigia_api::Check::take_state(&c)); }
    let o = run_body("return {ok = io == nil and os.execute == nil and require == nil and debug == nil and dofile == nil and string.dump == nil and collectgarbage == nil, message = tostring(os.time())}").await;
    println!("{o:?}");
}
