from twisted.application.service import ServiceMaker

chatd = ServiceMaker("chatd", "chatd.tap", "Multi-room WebSocket chat daemon", "chatd")
