# frozen_string_literal: true

require "json"
require "socket"
require "uri"
require_relative "errors"
require_relative "exec"

module VagrantPlugins
  module Ctd
    # ctd's REST API: HTTP/1.1 over the local unix socket (default), or HTTPS with a Bearer token
    # for a remote ctd (ctd.remote + ctd.token; the server's certificate is verified against
    # ctd.ca_file if given, else its SHA-256 fingerprint must equal ctd.fingerprint).
    # Operations (202) are waited for with ?wait=true; a failed one raises CtdError with ctd's text.
    class Client
      DEFAULT_SOCKET = "/run/ctd/ctd.sock"
      NotFound = Class.new(CtdError)

      def initialize(socket: nil, remote: nil, token: nil, fingerprint: nil, timeout: 900)
        @socket = socket || ENV["CTD_SOCKET"] || DEFAULT_SOCKET
        @remote = remote
        @token = token
        @fingerprint = fingerprint&.downcase&.delete(":")
        @timeout = timeout
      end

      def remote?
        !@remote.nil?
      end

      def get(path)
        request("GET", path)
      end

      # A request that may answer with an operation: wait for it; its result, or raise.
      def run(method, path, body = nil)
        reply = request(method, path + (path.include?("?") ? "&" : "?") + "wait=true", body)
        op = reply["operation"]
        return reply if op.nil?
        op = get("/1.0/operations/#{op["id"]}/wait?timeout=60")["operation"] while op["status"] == "running"
        raise CtdError, (op["error"] || "the #{op["kind"]} of #{op["target"]} failed") if op["status"] == "failure"
        op["result"] || {}
      end

      # a command in a running instance through ctd's exec WebSocket: Exec::Result (code, stdout, stderr)
      def exec(name, argv, stdin: nil)
        headers = remote? ? { "Authorization" => "Bearer #{@token}" } : {}
        Exec.new(remote? ? open_tls : open_unix, headers).run(name, argv, stdin: stdin)
      end

      def request(method, path, body = nil)
        payload = body.nil? ? nil : JSON.generate(body)
        status, text = remote? ? https(method, path, payload) : unix(method, path, payload)
        data = text.empty? ? {} : JSON.parse(text)
        return data if status < 400
        message = data.is_a?(Hash) && data["error"] ? data["error"] : "HTTP #{status} from ctd"
        raise NotFound, message if status == 404
        raise CtdError, message
      rescue JSON::ParserError
        raise CtdError, "ctd answered #{method} #{path} with something that is not JSON"
      end

      private

      def open_unix
        UNIXSocket.new(@socket)
      rescue Errno::ENOENT, Errno::ECONNREFUSED
        raise CtdError, "ctd is not running (no daemon answers on #{@socket}); start it: systemctl start ctd"
      rescue Errno::EACCES
        raise CtdError, "no permission to use #{@socket}: run as root or a member of group ctd"
      end

      # a TLS stream to the remote ctd (for the exec WebSocket), checked as https() checks it
      def open_tls
        require "openssl"
        require "digest"
        uri = URI(@remote)
        ctx = OpenSSL::SSL::SSLContext.new
        ctx.verify_mode = OpenSSL::SSL::VERIFY_PEER
        ctx.cert_store = OpenSSL::X509::Store.new.tap(&:set_default_paths)
        pin = @fingerprint
        ctx.verify_callback = lambda do |ok, store|
          next ok if pin.nil?
          cert = store.current_cert
          cert && Digest::SHA256.hexdigest(cert.to_der) == pin
        end
        tls = OpenSSL::SSL::SSLSocket.new(TCPSocket.new(uri.host, uri.port), ctx)
        tls.hostname = uri.host
        tls.sync_close = true
        tls.connect
        tls
      rescue Errno::ECONNREFUSED, SocketError, OpenSSL::SSL::SSLError => e
        raise CtdError, "cannot reach ctd at #{@remote}: #{e.message}"
      end

      def unix(method, path, payload)
        sock = open_unix
        head = +"#{method} #{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        head << "Content-Type: application/json\r\nContent-Length: #{payload.bytesize}\r\n" if payload
        sock.write(head + "\r\n" + (payload || ""))
        raw = read_all(sock)
        parse(raw)
      ensure
        sock&.close
      end

      def read_all(sock)
        raw = +""
        loop do
          raise CtdError, "ctd did not answer within #{@timeout} s" unless sock.wait_readable(@timeout)
          chunk = sock.read_nonblock(65_536, exception: false)
          break if chunk.nil?
          raw << chunk unless chunk == :wait_readable
        end
        raw
      end

      def parse(raw)
        head, body = raw.split("\r\n\r\n", 2)
        raise CtdError, "ctd closed the connection without an answer" if head.nil? || body.nil?
        lines = head.split("\r\n")
        status = lines.shift.to_s.split(" ")[1].to_i
        headers = lines.to_h { |l| k, v = l.split(":", 2); [k.downcase, v.to_s.strip] }
        body = dechunk(body) if headers["transfer-encoding"]&.include?("chunked")
        [status, body.force_encoding("UTF-8")]
      end

      def dechunk(body)
        out = +""
        until body.empty?
          size_line, rest = body.split("\r\n", 2)
          size = size_line.to_i(16)
          break if size.zero? || rest.nil?
          out << rest[0, size]
          body = rest[(size + 2)..] || ""
        end
        out
      end

      def https(method, path, payload)
        require "net/http"
        require "openssl"
        require "digest"
        uri = URI.join(@remote, path)
        http = Net::HTTP.new(uri.host, uri.port)
        http.use_ssl = true
        http.read_timeout = @timeout
        pin = @fingerprint
        # ctd's certificate is self-signed by default: trust exactly the pinned fingerprint.
        http.verify_mode = OpenSSL::SSL::VERIFY_PEER
        http.verify_callback = lambda do |ok, store|
          next ok if pin.nil?
          cert = store.current_cert
          cert && Digest::SHA256.hexdigest(cert.to_der) == pin
        end
        req = Net::HTTPGenericRequest.new(method, !payload.nil?, true, uri.request_uri,
                                          "Authorization" => "Bearer #{@token}", "Content-Type" => "application/json")
        req.body = payload if payload
        res = http.request(req)
        [res.code.to_i, res.body.to_s]
      rescue Errno::ECONNREFUSED, SocketError, OpenSSL::SSL::SSLError => e
        raise CtdError, "cannot reach ctd at #{@remote}: #{e.message}"
      end
    end
  end
end
