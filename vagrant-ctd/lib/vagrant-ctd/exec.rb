# frozen_string_literal: true

require "base64"
require "json"
require "securerandom"
require "uri"
require_relative "errors"

module VagrantPlugins
  module Ctd
    # A command run in an instance through ctd's exec WebSocket (GET /1.0/instances/NAME/exec,
    # docs/api.md): binary frames carry stdin (to ctd) and stdout/stderr (channel byte 1/2 first),
    # a text frame {"type": "exit", "code": N} ends it. The minimal client side of RFC 6455 the
    # plugin needs (masked frames out, unfragmented or continued frames in, ping answered), so the
    # plugin writes the machine's key without an ssh round trip and without a gem.
    class Exec
      Result = Struct.new(:code, :stdout, :stderr)

      # stream: a connected IO (UNIX socket or TLS socket); headers: extra request headers
      def initialize(stream, headers = {}, timeout: 60)
        @io = stream
        @headers = headers
        @timeout = timeout
        @buf = +"".b
      end

      def run(name, argv, stdin: nil)
        query = URI.encode_www_form(argv.map { |a| ["cmd", a] })
        handshake("/1.0/instances/#{URI.encode_www_form_component(name)}/exec?#{query}")
        send_frame(0x2, stdin.b) if stdin && !stdin.empty?
        send_frame(0x1, JSON.generate({ "type" => "eof" }))
        out = +"".b
        err = +"".b
        loop do
          opcode, data = read_message
          case opcode
          when 0x2
            (data.getbyte(0) == 2 ? err : out) << data.byteslice(1..).to_s
          when 0x1
            msg = JSON.parse(data) rescue {}
            return Result.new(msg["code"].to_i, out, err) if msg.is_a?(Hash) && msg["type"] == "exit"
          when 0x8
            raise CtdError, "ctd ended the exec of #{argv.first} in #{name} without an exit code"
          end
        end
      ensure
        @io.close unless @io.closed?
      end

      private

      def handshake(path)
        key = Base64.strict_encode64(SecureRandom.random_bytes(16))
        head = +"GET #{path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
                "Sec-WebSocket-Key: #{key}\r\nSec-WebSocket-Version: 13\r\n"
        @headers.each { |k, v| head << "#{k}: #{v}\r\n" }
        @io.write(head + "\r\n")
        fill until (at = @buf.index("\r\n\r\n"))
        reply = @buf.byteslice(0, at).force_encoding("UTF-8")
        @buf = @buf.byteslice((at + 4)..).to_s.b
        status = reply.split(" ", 3)[1].to_i
        return if status == 101
        # an error answer: its JSON body says why (e.g. 409: not running, no guest agent)
        length = reply[/^content-length:\s*(\d+)/i, 1].to_i
        fill while @buf.bytesize < length
        text = (JSON.parse(@buf.byteslice(0, length))["error"] rescue nil)
        raise CtdError, (text || "ctd refused the exec (HTTP #{status})")
      end

      # read what is there first (a TLS stream may hold decrypted bytes the socket no longer shows)
      def fill
        loop do
          chunk = @io.read_nonblock(65_536, exception: false)
          raise CtdError, "ctd closed the exec connection" if chunk.nil?
          if chunk.is_a?(Symbol)
            ready = chunk == :wait_writable ? IO.select(nil, [@io], nil, @timeout) : IO.select([@io], nil, nil, @timeout)
            raise CtdError, "ctd did not answer the exec within #{@timeout} s" unless ready
            next
          end
          @buf << chunk
          return
        end
      end

      def take(count)
        fill while @buf.bytesize < count
        part = @buf.byteslice(0, count)
        @buf = @buf.byteslice(count..).to_s.b
        part
      end

      # one whole message: [opcode, payload]; control frames between fragments are handled
      def read_message
        opcode = nil
        data = +"".b
        loop do
          b0, b1 = take(2).bytes
          op = b0 & 0x0f
          len = b1 & 0x7f
          len = take(2).unpack1("n") if len == 126
          len = take(8).unpack1("Q>") if len == 127
          mask = (b1 & 0x80).zero? ? nil : take(4).bytes
          payload = take(len)
          payload = payload.bytes.each_with_index.map { |c, i| c ^ mask[i % 4] }.pack("C*") if mask
          if op == 0x9
            send_frame(0xA, payload)
            next
          end
          next if op == 0xA
          return [op, payload] if op == 0x8
          opcode ||= op
          data << payload
          return [opcode, data] if (b0 & 0x80) != 0
        end
      end

      def send_frame(opcode, payload)
        payload = payload.b
        mask = SecureRandom.random_bytes(4).bytes
        head = [0x80 | opcode].pack("C")
        len = payload.bytesize
        head << if len < 126
                  [0x80 | len].pack("C")
                elsif len < 65_536
                  [0x80 | 126, len].pack("Cn")
                else
                  [0x80 | 127, len].pack("CQ>")
                end
        masked = payload.bytes.each_with_index.map { |c, i| c ^ mask[i % 4] }.pack("C*")
        @io.write(head + mask.pack("C*") + masked)
      end
    end
  end
end
